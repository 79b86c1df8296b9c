from experiments.tables import cli_run

if __name__ == "__main__":
    cli_run()
