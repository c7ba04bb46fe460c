"""Reading weights from where users have them: our checkpoints, torchvision/timm files,
Keras HDF5 and TF-Slim checkpoints, and mapping their names onto our models'."""
