"""The read side: every report, statement, journal page, performance series and operations view the doors show.

`views` has one function per read (the API's controllers, the pages and the command line all call it);
`reports` computes the finance reports over one snapshot; `tabular` shapes the answers as JSON bodies and rows.
"""
