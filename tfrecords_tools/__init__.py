"""DICOM / PNG / JPEG archives to sharded TFRecords for remedis-tf."""

from tfrecords_tools.version import CONVERTER_VERSION

__all__ = ["CONVERTER_VERSION"]
