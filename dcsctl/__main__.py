from dcsctl.main import run

run()
