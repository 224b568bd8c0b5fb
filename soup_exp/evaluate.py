"""`soup-exp evaluate`: evaluate every model of an experiment on the eval suite
(`check_data=true` only checks the dataset layouts)."""

from soup_exp.utils.entry import stage_entry

main = stage_entry("evaluate")

if __name__ == "__main__":
    main()
