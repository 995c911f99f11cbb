"""Training the FDN (Algorithm 1) and the model directories it writes.

    trainer.py      Trainer, train, train_on_slices: Algorithm 1
    data.py         the training slices of an archive, sampling and augmentation
    losses.py       the training losses (eq. 5-12; eq. 3 is the quantizer's)
    checkpoint.py   model directories: config.json, weights.pt, checkpoint.pt, load_model
    evaluate.py     a trained model's figures on an archive

Nothing is imported here, so that `fdn.training.checkpoint` (needed by a query that encodes)
loads no training code.
"""
