"""`soup-exp soup`: cook soups and baselines from a pool of ingredients."""

from soup_exp.utils.entry import stage_entry

main = stage_entry("soup")

if __name__ == "__main__":
    main()
