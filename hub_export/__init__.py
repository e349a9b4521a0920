"""Export remedis-tf encoders as TF-Hub SavedModels (PhysioNet format) and load them back."""
