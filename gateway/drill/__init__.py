"""`gateway drill` (`run`): a sample red warning (`samples`) through the whole flow in one
process, on embedded stand-ins for every channel's far side (`sinks`), which the tests use too."""
