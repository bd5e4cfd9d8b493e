"""``python -m jdnet_plugin.derain``. Importing this module replaces the attribute ``jdnet_plugin.derain`` (the
function) with it, so the module is callable as that function: ``jdnet_plugin.derain(image)`` works whatever
was imported."""
import sys
import types

from jdnet_plugin.cli.derain import main
from jdnet_plugin.inference import derain as _derain


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _derain(*args, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
sys.modules[__name__].__class__ = _CallableModule
