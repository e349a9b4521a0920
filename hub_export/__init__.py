"""Export remedis-tf encoders as TF-Hub SavedModels (PhysioNet format) and load them back.

  export_encoder(model, export_dir, metadata=None)   Keras encoder -> SavedModel
  load_for_finetuning(path, num_classes=None, ...)   SavedModel -> Keras 3 model
  load_encoder(path, ...)                            SavedModel -> Keras 3 encoder
  SavedModelEncoder                                  the Keras 3 layer behind both
  embed_dataset(model_path, data, output, ...)       pooled embeddings of TFRecords

CLIs: remedis-export (hub_export.export_main), remedis-embed (hub_export.embed_main).
"""

from hub_export.embed import embed_dataset
from hub_export.export import export_encoder
from hub_export.load import SavedModelEncoder, load_encoder, load_for_finetuning
from hub_export.metadata import ExportMetadata, metadata_for, parse_release_name

__all__ = [
  "ExportMetadata",
  "SavedModelEncoder",
  "embed_dataset",
  "export_encoder",
  "load_encoder",
  "load_for_finetuning",
  "metadata_for",
  "parse_release_name",
]
