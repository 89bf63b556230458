"""The report's parts: ``figures`` draws PNGs from plain data (or says why it cannot), ``html`` lays them out.

Neither reads nor writes files: ``embedforge.stages.report`` gathers the inputs
and writes the page, so each part can be tested on data built in memory. The
page's markup and CSS are ``page.html.j2``, package data beside ``html``.
"""
