"""Measures of a model or a run: Hessian sharpness from Hessian-vector products (hessian),
sparsity at initialisation (sparsity), and the fit rule on a run's training history (fit)."""
