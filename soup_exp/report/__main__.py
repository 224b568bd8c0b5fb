"""`python -m soup_exp.report` (= `soup-exp report`): the paper's table and figures.

The report stage's entry point lives here because `soup_exp/report/` is also the
package holding the table and figure code.
"""

from soup_exp.utils.entry import stage_entry

main = stage_entry("report")

if __name__ == "__main__":
    main()
