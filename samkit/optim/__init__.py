"""The optimizers people drop into their training: SAM and ASAM (sam), its cheaper variants
(variants), the BatchNorm freeze for the second pass (bn), the tensor operations and state_dict
of a SAM step (ops, state), and a whole step in one CUDA graph (graph_step). Needs torch only."""
