"""Train K small models at once as one batched computation.

An audit needs many reference models trained with the candidate's own recipe. One step
of one small model is too little work to keep the machine busy and pays the Python and
dispatch overhead of a whole training step; here the K models' parameters are stacked,
and one batched forward/backward plus one fused optimizer call step all of them.

Three paths compute the step (`engine._ensemble` takes the first that fits and logs why
it passed over the others):

- the MLP fast path (`mlp_fast_path_problem` says when it applies: a plain
  ``nn.Sequential`` of Linear layers, activations, Dropout, Identity and Flatten, on
  CPU, in float32): stacked ``(K, out, in)`` weights, one ``baddbmm`` per layer forward
  and a backward written out by hand, without autograd or vmap (`_MLPEnsemble`);
- the conv fast path (`conv_fast_path_problem`, then a probe): K convolutional networks
  as one network over stacked channels, the model's own forward, autograd
  (`_ConvEnsemble`, `conv_layers`);
- the general path for any other model (``torch.func``): the trainable parameters of all
  models live in one ``(K, P)`` tensor (row ``k`` is model ``k``), and a vmapped
  ``functional_call`` with one autograd backward gives all gradients (`_Ensemble`).

The result must not depend on the backend: model ``k`` is initialised, fed and updated
exactly as `sequential.train_one` does it with ``seeds[k]`` (same initialisation, same
batches in the same order, same mean loss, clipping and optimizer arithmetic), so the
trained weights agree to float rounding for deterministic layers. Dropout draws its own
masks per model (the random streams of the backends differ, as they do between runs;
the fast path draws them from a numpy stream seeded by the seeds, see `_DropoutOp`; on
CPU the general path draws them with `_UniformDropout`, which is faster than
``bernoulli_``).

Ragged subsets: models see different numbers of records, hence different step counts and
last-batch sizes. At step ``t`` every model gets the same number of rows; rows past its
real batch repeat its batch's first record and carry weight 0, and a model whose epoch is
over takes no optimizer step (parameters, momentum, Adam moments and step count stay).
Inside the ensemble the models are sorted by steps per epoch, so that models stepping
together are contiguous for the optimizer (`_StackedOptimizer`). BatchNorm, which mixes
the rows of a batch, computes each model's moments over its real rows only and moves its
running statistics only when it steps (`batch_norm`).
"""

from privacy_gate.training.batched.eligibility import BatchingUnsupported, batching_problem
from privacy_gate.training.batched.engine import train_batched
from privacy_gate.training.batched.mlp_fast_path import mlp_fast_path_problem

__all__ = ["BatchingUnsupported", "batching_problem", "mlp_fast_path_problem", "train_batched"]
