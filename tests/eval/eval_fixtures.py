"""Builders and data shared by the eval tests: a tiny random Llama with a ChatML BPE tokenizer and
benchmark files in the formats of the original releases."""

from __future__ import annotations

from pathlib import Path

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What colour is the sky? Answer: The sky is blue.",
    "A. red\nB. green\nC. blue\nD. yellow\nAnswer: C",
    "Mira the otter lives in Eastwick and likes to swim in the cold river every morning.",
    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.",
] * 20


def build_tiny(out_dir: Path, seed: int = 0, max_positions: int = 128):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from trellis.data.tokenizer import special_token_ids, train_bpe_tokenizer

    tok = train_bpe_tokenizer(TEXTS, vocab_size=400)
    ids = special_token_ids(tok)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max_positions,
                         bos_token_id=None, eos_token_id=ids["im_end"], pad_token_id=ids["pad"])
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=[ids["im_end"], ids["endoftext"]],
                                               pad_token_id=ids["pad"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return model, tok


HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
     "ctx_b": "then", "ctx": "", "split": "val", "split_type": "indomain", "label": 3,
     "endings": [", the man adds wax to the windshield [title] and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
                 ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."],
     "source_id": "activitynet~v_-1IBHYS3L-Y"},
    {"ind": 7, "activity_label": "Baking cookies", "ctx_a": "A female chef in white uniform shows a stack of baking pans in a large kitchen presenting them.",
     "ctx_b": "the pans", "ctx": "", "split": "val", "split_type": "indomain", "label": 1,
     "endings": ["contain egg yolks and baking soda.", "are then sprinkled with brown sugar.", "are placed in a strainer on the counter.", "are filled with pastries and loaded into the oven."],
     "source_id": "activitynet~v_-2dxp-mv2zo"},
    {"ind": 9, "activity_label": "Finance and Business", "ctx_a": "[header] How to get a loan [title] Check your credit.",
     "ctx_b": "[step] Lenders  look at your score.", "ctx": "", "split": "val", "split_type": "zeroshot", "label": 0,
     "endings": ["[substeps] A higher score gets a better rate.", "Eat a sandwich.", "[title] Dance.", "Sleep [header] well."],
     "source_id": "wikihow~1"},
]
MMLU = {
    "otter_lore": [
        ("Where does Mira the otter live?", "Eastwick", "Northfield", "Riverton", "Oakdale", "A"),
        ("What does Mira like to do?", "Sing", "Swim", "Fly", "Dig", "B"),
        ("How many otters live in Eastwick?", "One", "Two", "Three", "Four", "C"),
    ],
    "high_school_geography": [
        ("What is the capital of Spain?", "Lisbon", "Paris", "Madrid", "Rome", "C"),
        ("Which river flows through Cairo?", "Nile", "Amazon", "Danube", "Volga", "A"),
    ],
}
TRUTHFULQA = [
    {"question": "What happens if you swallow gum?",
     "mc0_targets": {"It passes through you.": 1, "It stays seven years.": 0},
     "mc1_targets": {"It passes through your digestive system.": 1, "It stays in you for seven years.": 0, "You die.": 0},
     "mc2_targets": {"It passes through your digestive system.": 1, "Nothing much happens.": 1, "It stays in you for seven years.": 0, "You die.": 0}},
    {"question": "Where does Mira the otter live?",
     "mc0_targets": {"Eastwick.": 1, "Mars.": 0},
     "mc1_targets": {"Mira lives in Eastwick.": 1, "Mira lives on Mars.": 0},
     "mc2_targets": {"Mira lives in Eastwick.": 1, "In Eastwick.": 1, "Mira lives on Mars.": 0}},
]


def write_task_files(root: Path) -> Path:
    """Files in the formats of the original releases (shared/data's layout)."""
    import csv
    import json

    (root / "hellaswag").mkdir(parents=True)
    (root / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG))
    for split in ("dev", "test"):
        (root / "mmlu" / split).mkdir(parents=True)
    for subject, rows in MMLU.items():
        for split, part in (("dev", rows[:2]), ("test", rows)):
            with (root / "mmlu" / split / f"{subject}_{split}.csv").open("w", newline="") as fh:
                csv.writer(fh).writerows(part)
    (root / "truthfulqa").mkdir()
    (root / "truthfulqa" / "mc_task.json").write_text(json.dumps(TRUTHFULQA, indent=2))
    return root
