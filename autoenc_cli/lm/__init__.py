"""Language models: capturing their activations (``autoenc harvest``) into a cache that ``data=activations``
trains on, and scoring a sparse autoencoder by what splicing it into the model does to the model's loss."""
