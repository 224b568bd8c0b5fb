"""Fine-tuning: zero-shot, linear-probe and end-to-end ingredients (``run_finetune``)."""
