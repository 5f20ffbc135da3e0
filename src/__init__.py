"""Library code for the CIFAR-100 ResNet pipeline; each DVC stage in stages/ calls into it."""
