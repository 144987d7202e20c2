"""Imaging example: immunohistochemistry patches (scikit-image's bundled slide), a small
2D ResNet with BatchNorm, flip test-time augmentation, and a MedMNIST ``.npz`` loader."""
