"""Every command that README.md and docs/*.md show would start: scripts exist, flags parse, config files exist and
load; every relative link and backticked repository path of those files exists.

The lead reruns this after merging everyone's README and docs edits. The checker itself is tested on commands that
must fail (a missing script, an unknown flag, a missing config, a bad trainer override, a bad launcher flag, an
unknown program, a line the shell cannot parse, a bad command in a docs file) and on broken links and paths, so a
checker that silently accepted everything would fail here too.
"""

from __future__ import annotations

import re

import pytest
import yaml

from adakd_ds.config.load import load_config
from adakd_ds.config.schema import Mode
from tests.doc_links import check_links, check_prose_paths, heading_anchors
from tests.readme_commands import REPO, check_doc_file, check_markdown, doc_files, extract_commands

README = (REPO / "README.md").read_text()
DOCS = doc_files()  # README.md and docs/*.md
TOPICS = {"README.md", "method.md", "configuration.md", "checkpoints-and-faults.md", "slurm.md", "evaluation.md",
          "experiments.md", "benchmarks.md", "development.md"}  # fmt: skip
# Reserved for other engineers' work: the lead adds and links them at merge (issue 20).
RESERVED = {"when-adakd-pays.md", "offline-teacher.md", "slurm-multinode.md", "formats.md"}
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _md(*commands: str) -> str:
    return "text\n\n```bash\n" + "\n".join(commands) + "\n```\n"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_link_and_path_of_the_docs_holds(path):
    problems = check_doc_file(path)
    assert not problems, "\n".join(problems)


def test_the_docs_are_the_front_door_and_its_rooms():
    """README.md stays short; every docs/ file is linked from it (the reserved ones only once the lead adds them)."""
    assert len(README.splitlines()) <= 300
    assert {p.name for p in DOCS} >= TOPICS
    for path in DOCS[1:]:
        assert f"](docs/{path.name})" in README or path.name in RESERVED, f"README.md does not link docs/{path.name}"
    commands = [c for p in DOCS[1:] for c in extract_commands(p.read_text())]
    assert len(commands) >= 30, len(commands)  # the docs' commands are found, so the test above is not vacuous


def test_the_readme_commands_are_found():
    """The extractor sees the README's commands (an extractor that finds none would make the test above vacuous)."""
    programs = {c.argv[0] for c in extract_commands(README)}
    assert {"bash", "deepspeed", "torchrun", "adakd-submit", "adakd-eval", "sbatch", "python"} <= programs, programs
    submit = [c for c in extract_commands(README) if c.argv[0] == "adakd-submit"]
    assert submit and all(any(a.startswith("configs/") for a in c.argv) for c in submit)  # the shipped examples


BAD = {
    "missing script": ("python launch/nope.py --x 1", "launch/nope.py"),
    "unknown flag": ("adakd-eval --model m --data d --out o --no-such-flag", "unrecognized arguments: --no-such-flag"),
    "missing required flag": ("adakd-eval --data d --out o", "--model"),
    "bad flag value": ("python launch/quickstart.py --nproc two", "invalid int value"),
    "missing config": ("adakd-submit --config configs/missing.yaml --nodes 2", "configs/missing.yaml: no such file"),
    "unknown trainer key": (
        "deepspeed --num_gpus 2 launch/distill.py --config configs/cpu_tiny.yaml --loss.nope 1",
        "unknown config key 'loss.nope'",
    ),
    "bad override after --": (
        "adakd-submit --config configs/distill.yaml --nodes 2 -- --train.micro_batch 0",
        "train.micro_batch must be >= 1",
    ),
    "unknown submit flag": ("adakd-submit --config configs/distill.yaml --gpu-count 8", "unrecognized arguments"),
    "bad launcher flag": (
        "torchrun --nproc_per_node 2 --bogus launch/evaluate.py --model a --data b --out c",
        "torchrun flags",
    ),
    "flag through a shell script": ("bash launch/quickstart.sh --fastest", "unrecognized arguments: --fastest"),
    "args to a script that takes none": ("bash launch/install.sh --fast", "takes no arguments"),
    "missing module": ("python -m adakd_ds.nope --x", "no module adakd_ds.nope"),
    "missing sbatch config": ("ADAKD_CONFIG=configs/x.yaml sbatch slurm/distill.sbatch", "configs/x.yaml: no such file"),
    "repo path that does not exist": ("adakd-distill --config configs/distill.yaml --deepspeed.student ds_configs/x.json",
                                      "ds_configs/x.json: no such file"),
    "unknown program": ("frobnicate --all", "unknown program 'frobnicate'"),
    "optional flag in brackets": ("adakd-eval --model m --data d --out o [--gredy]", "--gredy"),
    "behind wrappers": ("time nice -n 5 python launch/quickstart.py --fastt > log", "unrecognized arguments: --fastt"),
}  # fmt: skip


BAD["a line the shell cannot parse"] = ('python launch/quickstart.py --out "x', "the shell cannot parse it")


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_checker_reports_a_bad_command(case):
    command, expected = BAD[case]
    problems = check_markdown(_md(command))
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith("README.md:4: "), problems  # names the README line of the command


def test_a_bad_command_in_a_docs_file_fails_naming_that_file(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    bad = docs / "topic.md"
    bad.write_text("# Topic\n\n```bash\nadakd-submit --config configs/distill.yaml --gpu-count 8\n```\n")
    problems = check_doc_file(bad)
    assert len(problems) == 1 and problems[0].startswith("topic.md:4: ") and "unrecognized arguments" in problems[0]


def test_broken_links_and_paths_fail(tmp_path):
    here = tmp_path / "docs" / "page.md"
    here.parent.mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A `code` heading: yes\n")
    text = (
        "# Page\n"
        "[ok](other.md) [ok](other.md#a-code-heading-yes) [ok](#page) [web](https://example.com/x.md)\n"
        "[gone](missing.md) ![img](../bench/nope.png) [anchor](other.md#no-such-heading)\n"
        "```bash\n[not a link](nowhere.md)\n```\n"
        "`adakd_ds/loss/latf.py` exists, `adakd_ds/engine/data_policy.py` moved, `<output.dir>/x` is a pattern\n"
    )
    here.write_text(text)
    problems = check_links(text, here) + check_prose_paths(text, here)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "link missing.md: no such file",
        "link ../bench/nope.png: no such file",
        "link other.md#no-such-heading: no heading #no-such-heading in other.md",
        "`adakd_ds/engine/data_policy.py`: no such file in the repository",
    ], problems
    assert problems[0].startswith("page.md:3") and problems[-1].startswith("page.md:7")
    assert heading_anchors("# Launcher: why `deepspeed`\n```\n# not a heading\n```\n") == {"launcher-why-deepspeed"}


def test_the_checker_accepts_good_commands_in_every_form():
    good = _md(
        "$ DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/distill.py --config configs/cpu_tiny.yaml \\",
        "    --loss.divergence fkl --train.lr=2e-5   # a comment",
        "torchrun --nproc_per_node 2 launch/evaluate.py --model ... --data ... --out ... [--greedy] [--seeds 1 2]",
        "adakd-distill --config configs/sft.yaml [--section.key value ...]",
        "python -m adakd_ds.checkpoint.reshard runs/x/checkpoints/step_00000001",
        "bash launch/quickstart.sh --fast --out x && pip install -e .[bench]",
        "adakd-export --help",
        'OMP_NUM_THREADS=1 /usr/bin/time -f "%e %U %S" nice -n 10 python launch/quickstart.py --fast 2>&1 > log.txt',
        "timeout 60 slurm/make_hostfile.sh 8 > hostfile",
    )
    assert check_markdown(good) == []
    commands = extract_commands(good)
    assert len(commands) == 9
    assert commands[-2].argv == ["python", "launch/quickstart.py", "--fast"]
    assert commands[-2].env == {"OMP_NUM_THREADS": "1"}
    assert commands[-1].argv == ["slurm/make_hostfile.sh", "8"]


def test_only_shell_blocks_are_commands():
    text = "```python\nimport os\n```\n```\nlaunch/nope.py   a tree, not a command\n```\n```yaml\na: 1\n```\n"
    assert extract_commands(text) == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(str(path))
    cfg.validate()
    assert cfg.data.source and (cfg.model.student or cfg.model.student_config)


def test_the_shipped_configs_are_the_three_promised():
    assert {p.name for p in CONFIGS} >= {"distill.yaml", "sft.yaml", "cpu_tiny.yaml"}
    distill, sft = load_config(str(REPO / "configs" / "distill.yaml")), load_config(str(REPO / "configs" / "sft.yaml"))
    assert distill.mode is Mode.DISTILL and distill.loss.adakd and distill.model.teacher
    assert sft.mode is Mode.SFT and not sft.model.teacher


def test_the_engine_tests_start_from_the_cpu_config(tmp_path):
    """write_run_config is cpu_tiny.yaml with the test's own paths: the example is what the tests run."""
    from tests.engine_fixtures import TinySetup, write_run_config

    setup = TinySetup(*(tmp_path / n for n in ("root", "tok", "teacher", "student_cfg", "d.jsonl", "ds.json")))
    written = yaml.safe_load(write_run_config(setup, tmp_path / "run").read_text())
    shipped = yaml.safe_load((REPO / "configs" / "cpu_tiny.yaml").read_text())
    paths = {("model", "teacher"), ("model", "student_config"), ("model", "tokenizer"), ("data", "source"),
             ("data", "cache_dir"), ("output", "dir"), ("deepspeed", "student")}  # fmt: skip
    for section, values in written.items():
        for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
            if (section, key) not in paths:
                expected = shipped[section] if key is None else shipped[section][key]
                assert value == expected, (section, key)
    assert written["model"]["teacher"] == str(setup.teacher)


def test_readme_yaml_blocks_are_valid_run_configs(tmp_path):
    blocks = [b for p in DOCS for b in re.findall(r"```yaml\n(.*?)```", p.read_text(), flags=re.S)]
    assert len(blocks) >= 4  # README's run config, running.md's abridged distill.yaml, gkd.yaml and distillm.yaml
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block)
        load_config(str(path)).validate()
