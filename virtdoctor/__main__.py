from virtdoctor.cli import main

raise SystemExit(main())
