"""pi-daemon: a headless camera classifier for Raspberry Pi fleets."""

__version__ = "0.1.0"
