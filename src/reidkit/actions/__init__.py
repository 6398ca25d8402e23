"""One module per user verb; each verb is a plain function of the resolved spec.

The CLI (:mod:`reidkit.cli`) and the Python API (``reidkit.train(spec)`` ...) call the same
functions. Modules are imported by whoever calls them, so ``reidkit validate`` never loads
torch.
"""
