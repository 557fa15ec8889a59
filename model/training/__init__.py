"""Training a U-Net (``train``) and rendering multitrack datasets to train on (``dataset``)."""
