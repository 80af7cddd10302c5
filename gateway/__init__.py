"""Warning dissemination gateway for Chongqing's approved emergency warnings."""

__version__ = "0.1.0"
