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

from agents.cli import cli
from agents.configs import SearchConfig
from agents.workflows import search_schedule

if __name__ == "__main__":
    cli(search_schedule, SearchConfig, __doc__)
