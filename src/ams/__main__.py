from ams.cli.main import main

main()
