"""Converter version, written into every record and manifest."""

CONVERTER_VERSION = "remedis-tf-convert/0.1.0"
