from slmkit.cli.app import main

main()
