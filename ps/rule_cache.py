"""The update rules a shard has been asked for, each made once: a push names its rule by a
spec (a name and hyperparameters), and rebuilding the rule for every push would cost more
than a small push's arithmetic."""

import collections
import inspect
import threading

from psflow.errors import InvalidArgumentError
from psflow.train.update_rules import RULES, UpdateRule

# Distinct rule specs kept; a decaying learning rate makes a new spec every step.
RULE_CACHE_SIZE = 64


class RuleCache:
    """The last RULE_CACHE_SIZE rules by spec."""

    def __init__(self):
        self._rules = collections.OrderedDict()  # (name, sorted hyperparameters) -> rule
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._rules)

    def rule(self, name, hyper):
        """The UpdateRule for a spec (a name and its hyperparameters), made once and reused;
        InvalidArgumentError for an unknown rule or hyperparameters it does not take."""
        key = (name, tuple(sorted(hyper.items())))
        with self._lock:
            rule = self._rules.get(key)
            if rule is not None:
                self._rules.move_to_end(key)
                return rule
        if name not in RULES:
            raise InvalidArgumentError(f"unknown update rule {name!r}; known: "
                                       f"{', '.join(sorted(RULES))}")
        try:
            inspect.signature(RULES[name][0]).bind(None, None, None, **hyper)
        except TypeError as exc:
            raise InvalidArgumentError(f"update rule {name!r} with hyperparameters "
                                       f"{dict(hyper)}: {exc}") from None
        rule = UpdateRule(name, **hyper)
        with self._lock:
            self._rules[key] = rule
            while len(self._rules) > RULE_CACHE_SIZE:
                self._rules.popitem(last=False)
        return rule
