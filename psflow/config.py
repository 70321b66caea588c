"""TF1's session configuration objects, accepted so that scripts run: psflow has no devices to
configure, so nothing in them applies."""


class _Options:
    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


class GPUOptions(_Options):
    """Accepted and ignored (psflow runs on CPUs)."""


class ConfigProto(_Options):
    """Accepted and ignored: device placement, soft placement, thread counts and GPU options
    do not apply to psflow."""

    def __init__(self, **fields):
        fields.setdefault("gpu_options", GPUOptions())
        super().__init__(**fields)
