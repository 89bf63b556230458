"""The report's parts: ``figures`` draws PNGs from plain data, ``html`` lays them out with the numbers.

Neither reads nor writes files: ``embedforge.stages.report`` gathers the inputs
and writes the page, so each part can be tested on data built in memory.
"""
