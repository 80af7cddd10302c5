"""In-process stand-ins for the far sides of every channel, for `gateway drill`."""
