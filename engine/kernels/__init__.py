"""Hand-derived exact kernels: the gradient of the loss and its directional derivatives
(Hessian-vector products) for many tangent directions at once, shaped as a few large matrix
products. Torch only; no other engine imports."""
