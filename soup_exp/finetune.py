"""`soup-exp finetune`: train one ingredient (zero-shot, LP init or end-to-end fine-tune);
`-m sweep=paper_vitb32 'sweep.index=range(71)'` runs the paper's sweep. The work is
``soup_exp.train.finetune.run_finetune``."""

from soup_exp.utils.entry import stage_entry

main = stage_entry("finetune")

if __name__ == "__main__":
    main()
