"""Optimizers, TF1 style: `minimize(loss)` returns a train op; `compute_gradients` and
`apply_gradients` split it in two. The arithmetic is in `update_rules`, shared with the
parameter servers."""

import numbers

import numpy as np

from ..gradients import gradients
from ..graph import Node, get_default_graph
from ..variables import Variable, trainable_variables
from .update_rules import UpdateRule


class ApplyGradients(Node):
    """Applies one update rule to a list of variables; has no value. Runs through the
    session's variable store, which also advances `global_step` when one is given."""

    is_train_op = True  # a run with one trains: its table lookups create rows

    def __init__(self, rule, grads_and_vars, global_step=None, name=None, loss=None,
                 consistency=None, learning_rate=None):
        self.rule = rule
        self.loss = loss  # the loss being minimized, when known: progress reports show it
        self.variables = [v for _, v in grads_and_vars]
        self.global_step = global_step
        # A train.consistency.Consistency from SyncReplicasOptimizer and friends; None leaves
        # the mode to the job (launch --mode).
        self.consistency = consistency
        # A learning rate that is a tensor (a decay schedule) is computed each run.
        self.learning_rate = learning_rate
        inputs = [g for g, _ in grads_and_vars]
        super().__init__(inputs + ([learning_rate] if learning_rate is not None else []),
                         name=name or "Apply")

    def executor(self, session):
        store, rule, variables, global_step, consistency = (
            session.store, self.rule, self.variables, self.global_step, self.consistency)
        count = len(variables)

        def run(*values):
            now = rule
            if len(values) > count:
                learning_rate = float(values[count])
                if not np.isfinite(learning_rate) or learning_rate < 0:
                    raise ValueError(f"{self.name}: the learning rate is {learning_rate}; it "
                                     "must be a non-negative number")
                now = rule.with_hyper(learning_rate=learning_rate)
            store.apply_gradients(now, list(zip(values[:count], variables, strict=True)),
                                  global_step, consistency=consistency)
        return run


class Optimizer:
    """Base class: subclasses name their update rule and its hyperparameters."""

    rule_name = None

    def __init__(self, learning_rate, name, **hyper):
        self.name = name
        self.learning_rate_tensor = None
        if isinstance(learning_rate, Node):  # a schedule: computed at each training run
            if learning_rate.shape not in (None, ()):
                raise ValueError(f"{name}: learning_rate must be a scalar, "
                                 f"{learning_rate.name!r} has shape {learning_rate.shape}")
            self.learning_rate_tensor = learning_rate
            learning_rate = 0.0
        elif not isinstance(learning_rate, numbers.Real) or isinstance(learning_rate, bool) \
                or not np.isfinite(learning_rate) or learning_rate < 0:
            raise ValueError(f"{name}: learning_rate must be a non-negative number or a "
                             f"scalar tensor, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)
        self.rule = UpdateRule(self.rule_name, learning_rate=learning_rate, **hyper)

    def compute_gradients(self, loss, var_list=None):
        """[(gradient, variable)] for the trainable variables (or `var_list`); the gradient
        is None for a variable the loss does not depend on."""
        if not isinstance(loss, Node):
            raise TypeError(f"{self.name}: loss must be a graph node, got {loss!r}")
        var_list = list(var_list) if var_list is not None else trainable_variables(loss.graph)
        if not var_list:
            raise ValueError(f"{self.name}: no variables to optimize")
        for var in var_list:
            if not isinstance(var, Variable):
                raise TypeError(f"{self.name}: {var!r} in var_list is not a Variable")
        grads = gradients(loss, var_list)
        return list(zip(grads, var_list, strict=False))

    def apply_gradients(self, grads_and_vars, global_step=None, name=None, loss=None):
        """A train op applying the gradients; it increments `global_step` if given."""
        return self._train_op(grads_and_vars, global_step, name, loss)

    def _train_op(self, grads_and_vars, global_step, name, loss, consistency=None):
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not pairs:
            names = ", ".join(v.name for _, v in grads_and_vars)
            raise ValueError(f"{self.name}: no gradients provided for any variable ({names}); "
                             "does the loss depend on them?")
        graph = pairs[0][1].graph
        if global_step is not None and get_global_step(graph) is None:
            _adopt_global_step(graph, global_step)  # TF1's own global step variable
        with graph.as_default():
            return ApplyGradients(self.rule, pairs, global_step=global_step,
                                  name=name or self.name, loss=loss, consistency=consistency,
                                  learning_rate=self.learning_rate_tensor)

    def minimize(self, loss, global_step=None, var_list=None, name=None):
        """compute_gradients followed by apply_gradients."""
        return self.apply_gradients(self.compute_gradients(loss, var_list),
                                    global_step=global_step, name=name, loss=loss)


class GradientDescentOptimizer(Optimizer):
    rule_name = "sgd"

    def __init__(self, learning_rate, use_locking=False, name="GradientDescent"):
        super().__init__(learning_rate, name)


class MomentumOptimizer(Optimizer):
    rule_name = "momentum"

    def __init__(self, learning_rate, momentum, use_locking=False, name="Momentum",
                 use_nesterov=False):
        super().__init__(learning_rate, name, momentum=momentum, use_nesterov=use_nesterov)


class AdagradOptimizer(Optimizer):
    rule_name = "adagrad"

    def __init__(self, learning_rate, initial_accumulator_value=0.1, use_locking=False,
                 name="Adagrad"):
        if initial_accumulator_value <= 0:
            raise ValueError("initial_accumulator_value must be positive, got "
                             f"{initial_accumulator_value}")
        super().__init__(learning_rate, name,
                         initial_accumulator_value=initial_accumulator_value)


class FtrlOptimizer(Optimizer):
    """FTRL-Proximal, the classic optimizer of click-through-rate models: per-coordinate
    learning rates, with L1 driving unused weights to exactly 0 (see update_rules.ftrl)."""

    rule_name = "ftrl"

    def __init__(self, learning_rate, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 use_locking=False, name="Ftrl", accum_name=None, linear_name=None,
                 l2_shrinkage_regularization_strength=0.0):
        if learning_rate_power > 0:
            raise ValueError(f"{name}: learning_rate_power must be <= 0, got "
                             f"{learning_rate_power}")
        if initial_accumulator_value <= 0:
            raise ValueError(f"{name}: initial_accumulator_value must be positive, got "
                             f"{initial_accumulator_value}")
        if l1_regularization_strength < 0 or l2_regularization_strength < 0:
            raise ValueError(f"{name}: regularization strengths must not be negative")
        if l2_shrinkage_regularization_strength:
            raise NotImplementedError(f"{name}: l2_shrinkage_regularization_strength is not "
                                      "supported")
        super().__init__(learning_rate, name, learning_rate_power=learning_rate_power,
                         l1=l1_regularization_strength, l2=l2_regularization_strength,
                         initial_accumulator_value=initial_accumulator_value)


class AdamOptimizer(Optimizer):
    rule_name = "adam"

    """Adam. Sparse gradients (from gather / embedding lookups) update only their rows and
    those rows' moments (lazy_sparse=True, the default, as TF's LazyAdamOptimizer); pass
    lazy_sparse=False for TF1 AdamOptimizer's dense application, whose cost grows with the
    table."""

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 use_locking=False, name="Adam", lazy_sparse=True):
        super().__init__(learning_rate, name, beta1=beta1, beta2=beta2, epsilon=epsilon,
                         lazy_sparse=bool(lazy_sparse))


class LazyAdamOptimizer(AdamOptimizer):
    """TF's LazyAdamOptimizer: AdamOptimizer with lazy sparse updates (psflow's default)."""

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 use_locking=False, name="LazyAdam"):
        super().__init__(learning_rate, beta1, beta2, epsilon, use_locking, name,
                         lazy_sparse=True)


class RMSPropOptimizer(Optimizer):
    """TF1's RMSProp (its mean square starts at 1); `centered` divides by the estimated
    variance instead of the second moment."""

    rule_name = "rmsprop"

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10,
                 use_locking=False, centered=False, name="RMSProp"):
        if not 0.0 <= decay <= 1.0 or momentum < 0 or epsilon <= 0:
            raise ValueError(f"{name}: decay must be in [0, 1], momentum >= 0 and epsilon > 0; "
                             f"got {decay}, {momentum}, {epsilon}")
        super().__init__(learning_rate, name, decay=decay, momentum=momentum, epsilon=epsilon,
                         centered=bool(centered))


class AdadeltaOptimizer(Optimizer):
    rule_name = "adadelta"

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-8, use_locking=False,
                 name="Adadelta"):
        if not 0.0 <= rho <= 1.0 or epsilon <= 0:
            raise ValueError(f"{name}: rho must be in [0, 1] and epsilon > 0; got {rho}, "
                             f"{epsilon}")
        super().__init__(learning_rate, name, rho=rho, epsilon=epsilon)


def _adopt_global_step(graph, var):
    """Makes `var` the graph's global step (the one the parameter servers advance). Any
    numeric scalar will do, as in TF1 (a float32 one made by get_variable counts 1.0, 2.0...)."""
    if var.shape != () or np.dtype(var.dtype).kind not in "iuf":
        raise TypeError(f"the global step must be a numeric scalar variable; "
                        f"{var.name!r} is {np.dtype(var.dtype).name} of shape {var.shape}")
    graph.global_step = var
    return var


def get_global_step(graph=None):
    """The graph's global step variable, or None: the one made by get_or_create_global_step,
    added to the GLOBAL_STEP collection or passed to minimize(global_step=), or else, as in
    TF1, a numeric scalar variable named "global_step"."""
    graph = graph or get_default_graph()
    step = getattr(graph, "global_step", None)
    if step is None:
        for var in graph.variables:
            if var.name == "global_step" and var.shape == () and \
                    np.dtype(var.dtype).kind in "iuf":
                return _adopt_global_step(graph, var)
    return step


def get_or_create_global_step(graph=None):
    """The graph's global step: a non-trainable int64 Variable starting at 0."""
    graph = graph or get_default_graph()
    step = get_global_step(graph)
    if step is None:
        with graph.as_default():
            step = Variable(np.int64(0), trainable=False, name="global_step")
        graph.global_step = step
    return step


create_global_step = get_or_create_global_step


def global_step(sess, global_step_tensor):
    """The global step's current value as an int."""
    return int(sess.run(global_step_tensor))
