"""The end-to-end demo: a SYNTHETIC two-site chest radiograph archive and the study run on it."""
