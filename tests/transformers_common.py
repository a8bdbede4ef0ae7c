"""Import transformers' own common test mixins from its PyPI source distribution.

`tests/test_modeling_common.py`, `test_configuration_common.py`, `test_image_processing_common.py`
and `test_processing_common.py` of the installed transformers version ship in its sdist, which
`zse_hf.assets.transformers_tests_root()` fetches from PyPI, checks against the sha256 PyPI publishes
(or the one recorded in `zse_hf.assets.TRANSFORMERS_SDISTS_PASSED`, the versions this suite has
passed with) and caches under the zse_sbir cache. The sdist leaves out the helper modules those
files import from the rest of transformers' test tree; `load()` copies the four files into a
temporary package and supplies those helpers:

- `exporters.test_export.ExportTesterMixin`: the base of `ModelTesterMixin`. Here it holds one
  real test, `test_torch_export` (`torch.export` of every model class on the tester's inputs,
  outputs equal to eager).
- `generation.test_utils.GenerationTesterMixin`: only used in an `issubclass` check (a tester of
  a model that cannot `generate` must not inherit it); an empty class.
- `utils.test_configuration_utils.config_common_kwargs`: non-default values of
  `PretrainedConfig`'s common arguments (read by `ConfigTester` for non-composite configs).
- `fetch_hub_objects_for_ci.url_to_local_path`: maps a test-fixture URL to a local copy that
  transformers' CI downloads beforehand; there is none here, so URLs are returned unchanged
  (only chat-template/video/audio tests read them, none of which applies to ZSE).

Any installed transformers version is tested; one that is not in `TRANSFORMERS_SDISTS_PASSED` gets a
warning (new upstream tests may need declaring). `load()` skips the calling test module, with a
reason that starts with "NOT RUN", only when the sdist cannot be had (offline, a development build
with no sdist on PyPI) or `parameterized` is missing; with `ZSE_SBIR_REQUIRE_TRANSFORMERS_COMMON=1`
it fails instead.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

PACKAGE = "transformers_common_tests"
REQUIRE_ENV = "ZSE_SBIR_REQUIRE_TRANSFORMERS_COMMON"  # set to 1: fail instead of skipping
COMMON_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_image_processing_common.py",
    "test_processing_common.py",
)

_EXPORT_MIXIN = '''
"""Stand-in for transformers' tests/exporters/test_export.py (not in the sdist)."""
import torch

from transformers.testing_utils import torch_device


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict) or hasattr(value, "to_tuple"):
        value = value.to_tuple() if hasattr(value, "to_tuple") else tuple(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class ExportTesterMixin:
    """`torch.export` of each model class on the tester's inputs; outputs equal eager's."""

    def test_torch_export(self):
        if not getattr(self, "test_torch_exportable", True):
            self.skipTest("test_torch_exportable is False")
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            with torch.no_grad():
                eager = _tensors(model(**inputs))
                program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                exported = _tensors(program.module()(**inputs))
            self.assertEqual(len(eager), len(exported))
            for a, b in zip(eager, exported):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
'''

_GENERATION_MIXIN = '''
"""Stand-in for transformers' tests/generation/test_utils.py (not in the sdist)."""


class GenerationTesterMixin:
    """Generation tests; only used here in an issubclass check (ZSE cannot generate)."""
'''

_CONFIG_KWARGS = '''
"""Stand-in for transformers' tests/utils/test_configuration_utils.py (not in the sdist)."""

# non-default values of PretrainedConfig's common arguments
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "is_encoder_decoder": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "tie_word_embeddings": False,
}
'''

_FETCH = '''
"""Stand-in for transformers' utils/fetch_hub_objects_for_ci.py (not in the sdist)."""


def url_to_local_path(url, return_url_if_not_found=True):
    """The CI's local copy of a fixture URL; without that cache, the URL itself."""
    return url
'''


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def _not_run(reason: str):
    """Skip the calling test module loudly, or fail it when `ZSE_SBIR_REQUIRE_TRANSFORMERS_COMMON=1`."""
    message = f"NOT RUN: transformers' common tests (tests/test_transformers_common.py): {reason}"
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set)", pytrace=False)
    warnings.warn(message, stacklevel=3)
    pytest.skip(message, allow_module_level=True)


def load():
    """The four common test modules of the installed transformers as
    `(modeling, configuration, image_processing, processing)`.

    Skips the calling test module with a "NOT RUN" reason (or fails it, see `REQUIRE_ENV`) when
    they cannot be had; a version not in `zse_hf.assets.TRANSFORMERS_SDISTS_PASSED` only warns.
    """
    import transformers

    from zse_hf import assets

    version = transformers.__version__
    try:
        import parameterized  # noqa: F401  (the common files import it)
    except ImportError:
        _not_run("they need `pip install parameterized` (in the dev extra)")
    if PACKAGE not in sys.modules:
        try:
            source = assets.transformers_tests_root(version)
        except assets.AssetError as err:
            _not_run(f"cannot get the source distribution of the installed transformers {version} from PyPI: {err}")
        if version not in assets.TRANSFORMERS_SDISTS_PASSED:
            passed = ", ".join(assets.TRANSFORMERS_SDISTS_PASSED)
            warnings.warn(
                f"running transformers {version}'s common tests, which this suite has not passed with before "
                f"(passed: {passed}); a new upstream test that does not apply to ZSE needs declaring in "
                "tests/test_transformers_common.py, and a version that passes belongs in "
                "zse_hf.assets.TRANSFORMERS_SDISTS_PASSED",
                stacklevel=2,
            )
        root = Path(tempfile.mkdtemp(prefix="zse-transformers-tests-"))
        atexit.register(shutil.rmtree, root, True)
        package = root / PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name in COMMON_FILES:
            if not (source / name).is_file():
                raise FileNotFoundError(f"transformers {version}'s sdist has no tests/{name}: the common test "
                                        "layout changed upstream; update tests/transformers_common.py")
            shutil.copyfile(source / name, package / name)
        _write(package / "exporters" / "__init__.py", "")
        _write(package / "exporters" / "test_export.py", _EXPORT_MIXIN)
        _write(package / "generation" / "__init__.py", "")
        _write(package / "generation" / "test_utils.py", _GENERATION_MIXIN)
        _write(package / "utils" / "__init__.py", "")
        _write(package / "utils" / "test_configuration_utils.py", _CONFIG_KWARGS)
        _write(root / "utils" / "fetch_hub_objects_for_ci.py", _FETCH)  # test_processing_common adds ../utils
        sys.path.insert(0, str(root))
    return tuple(importlib.import_module(f"{PACKAGE}.{name[:-3]}") for name in COMMON_FILES)
