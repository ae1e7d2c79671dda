"""Code that runs inside the boot media (and the model both halves share).

Everything in this package must import with the Python standard library alone: it runs on the minimal
Debian Python inside the initramfs.
"""

__version__ = "0.1.0"
