import os

# Tests share two cores with each other's subprocesses: one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

try:
    import torch  # noqa: E402

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")


# `make test` runs two pytest-xdist workers. Each file's tests stay on one worker,
# so that a module-scoped recipe run is built once; the files that share the
# session's mini_espeak run share a worker; and the files with the longest set-up
# are handed out first (--no-loadscope-reorder keeps this order), so that neither
# worker is left with a long recipe run at the end. (xdist's own "loadgroup"
# cannot be used: it renames test ids in a way pytest 9 ignores.)
SHARED_WORKER = {"test_recipe_mini.py": "mini_espeak_run", "test_recipe_asterisk.py": "mini_espeak_run"}
LONGEST_FIRST = ("test_recipe_opuslm.py", "test_recipe_mini.py", "test_recipe_asterisk.py",
                 "test_recipe_librispeech.py", "test_train_dist.py", "test_opuslm_tokenizer.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it the suite runs in one process
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_WORKER.get(path.rsplit("/", 1)[-1], path)

    return FileGroupScheduling(config, log)


@pytest.fixture
def small_vocab():
    from espnet2_speechlm.vocab import JointVocab

    return JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 100}, num_codebooks=8)


TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)


@pytest.fixture
def tiny_llama_cfg():
    return dict(TINY_LLAMA)


@pytest.fixture(scope="session")
def mini_fast_recipe(tmp_path_factory):
    """egs2/mini_espeak run once per session with --fast true: (recipe dir, its run).

    Shared by test_recipe_mini and the recipes that fine-tune its packed model
    (test_recipe_asterisk), so that the tiny model is trained only once."""
    from recipe_helpers import ROOT, copy_recipe, sh

    d = copy_recipe(ROOT / "egs2" / "mini_espeak" / "speechlm1", tmp_path_factory.mktemp("mini") / "speechlm1")
    return d, sh(d, "./run.sh", "--fast", "true")
