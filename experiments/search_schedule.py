"""Learn a KD schedule by tree search: beam search over the menu's plans, epoch by epoch, on the
training seeds and the ctrl split only, every shared prefix trained once and replayed from its
stored state (``agents.search``). The objective is ``100 x ctrl score - cost_weight x compute``.

    python experiments/search_schedule.py --config experiments/configs/sst2_minilm_cpu.yaml --cost-weight 2 \\
        --out runs/sst2-search
    python experiments/compare.py --config experiments/configs/sst2_minilm_cpu.yaml --protocol \\
        --controllers runs/sst2-search/schedule.json --out runs/protocol-search

Writes ``OUT/``: ``schedule.json`` (the schedule: ``compare.py --controllers``, ``replay_schedule.py
--schedule``), ``search.csv`` (every prefix scored), ``search.json`` (choice, seeds, cost) and ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import workflow
from kd_backend.locking import check_folder, claim_folder
from workflow import SearchConfig

from agents import menu_plans
from envs.actions import MenuCodec
from agents.search import format_search, required_branch_cache, tree_search, write_search


def main(cfg: SearchConfig):
    workflow.configure_threads(cfg.threads, cfg.env.backend)
    spaces = workflow.expected_spaces(cfg.env)
    out = Path(cfg.out)
    check_folder(out, overwrite=cfg.overwrite)
    menu_size = len(MenuCodec(cfg.env, spaces.num_teachers, spaces.regression).names)
    need = max(cfg.env.branch_cache, required_branch_cache(cfg.beam, menu_size, len(cfg.seeds)))
    env = workflow.build_env(cfg.env.replace(report_dev=False, branch_cache=need), spaces)  # dev is never read
    menu = menu_plans(env)
    claim_folder(out, overwrite=cfg.overwrite)
    workflow.save_config(out / workflow.CONFIG_FILE, cfg)
    from tqdm.auto import tqdm

    prefixes = [min(cfg.beam, len(menu) ** d) for d in range(env.steps_per_episode)]  # kept before each depth
    trials = sum(prefixes) * len(menu) * len(cfg.seeds)
    with tqdm(total=trials, desc="search", unit="trial", disable=not cfg.env.backend.progress) as bar:
        result = tree_search(env, menu, cfg.seeds, beam=cfg.beam, progress=bar)
    write_search(out, result, task=env.distiller.spec.name, teachers=list(env.teacher_names), menu=list(menu))
    print(f"\n{format_search(result)}")
    print(f"\nwrote {out}/: schedule.json search.csv search.json config.yaml")
    print(f"evaluate: python experiments/compare.py --config CONFIG --protocol --controllers {out}/schedule.json "
          "(CONFIG: the config searched with; the reference is chosen on other seeds)")
    return result


if __name__ == "__main__":
    workflow.cli(main, SearchConfig, __doc__)
