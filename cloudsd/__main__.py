from cloudsd.cli.main import main

main()
