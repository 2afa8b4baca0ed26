"""The city's closed loop beyond single alerts (issue 14): incidents (unified classification),
dispatch both ways, silences and the loop's own figures. Each module has one job."""
