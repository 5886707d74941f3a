from fs_crm.cli import main

raise SystemExit(main())
