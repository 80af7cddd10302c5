"""CAP 1.2, the Common Alerting Protocol: China's national profile (`profile`), reading and
validating against the shipped OASIS schema, CAP-v1.2.xsd (`read`), and writing (`write`)."""
