"""System tests: real root filesystems, real systemd, real tools. They need root."""
