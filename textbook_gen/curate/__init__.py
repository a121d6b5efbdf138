"""Curation: filters -> verify -> judge -> dedup -> decontaminate, on records from a run or any JSONL."""
