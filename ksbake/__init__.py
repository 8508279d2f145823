"""ksbake: kickstart files in, bootable virtual appliances out, built as cached layers."""

__version__ = "0.1.0"
