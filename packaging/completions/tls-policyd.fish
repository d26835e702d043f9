# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tls_policyd_global_optspecs
    string join \n h/help V/version
end

function __fish_tls_policyd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tls_policyd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tls_policyd_using_subcommand
    set -l cmd (__fish_tls_policyd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -s V -l version -d 'Print version'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "serve" -d 'Run the daemon (SIGHUP reloads config and policy file and reopens the decision log; SIGTERM/SIGINT stop it)'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "explain" -d 'Show the decision for a destination key and every source consulted'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "probe" -d 'Probe a domain\'s mail servers for STARTTLS now and show what the policy decision and the policy server\'s answer would be'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "cache" -d 'The persisted cache (MTA-STS policies and DANE results): list it, show or purge a domain\'s entries'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "check-config" -d 'Load the config and policy file as `serve` would; exit 1 on errors'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "log" -d 'Read decision logs (rotated and gzipped ones too): decisions and delivery outcomes'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "report" -d 'The TLS posture per recipient domain from the delivery outcome records (shares sent encrypted and verified, held recipients, violations), as a table, JSON or an HTML page with charts'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "doctor" -d 'Check Postfix\'s configuration for wiring that bypasses the policy or stops mail (each finding with the command that fixes it), then ask the running daemon through postmap -q. Exit 0 when no problem is found, 1 otherwise'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "status" -d 'Ask a running daemon how it is: listeners, policy, caches, reloads, recent warnings and errors (from the [metrics] listener\'s /health). Exit 0 when it is healthy, 2 when the last reload failed, 1 when it cannot be reached'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "tlsrpt" -d 'TLS reports (RFC 8460): the reporting domains of a UTC day, a domain\'s report byte for byte, or send the day\'s reports now'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c tls-policyd -n "__fish_tls_policyd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand serve" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand serve" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand explain" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand explain" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand explain" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand probe" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand probe" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand probe" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -f -a "list" -d 'Every cached entry with its state and age'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -f -a "show" -d 'A domain\'s entries in full'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -f -a "purge" -d 'Remove a domain\'s entries from the cache file (a running daemon forgets them on its next reload)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and not __fish_seen_subcommand_from list show purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from list" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from show" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from purge" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "list" -d 'Every cached entry with its state and age'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "show" -d 'A domain\'s entries in full'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Remove a domain\'s entries from the cache file (a running daemon forgets them on its next reload)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand check-config" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -s f -l file -d 'A log file to read (repeatable, read in order)' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -s c -l config -d 'Read the decision log named in this configuration file, with its rotated files (read when no log file is given) [default: /etc/tls-policyd/config.toml]' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l domain -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l queue-id -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l since -d 'RFC 3339 time, or a duration ago such as 2h or 1d' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l tls -d 'forced or opportunistic' -r -f -a "forced\t''
opportunistic\t''"
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l verdict -d 'Only delivery records with this verdict (repeatable, or a comma list)' -r -f -a "verified\t''
encrypted\t''
plaintext-fallback\t''
held\t''
violation\t''
policy-unreachable\t''
undecided\t''
not-delivered\t''"
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l outcomes -d 'Only delivery outcome records (what Postfix did with each delivery)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l summary -d 'Counts by tls, source, level and domain, and by verdict for delivery records'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -l json -d 'Matching records as JSON lines'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand log" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -l log -d 'A decision log file to read (repeatable, read in order)' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -s c -l config -d 'Read the decision log named in this configuration file, with its rotated files (read when no log file is given) [default: /etc/tls-policyd/config.toml]' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -l since -d 'Start of the window: RFC 3339 time, or a duration ago such as 24h or 7d' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -l until -d 'End of the window, not included: RFC 3339 time, or a duration ago [default: now]' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -l domain -d 'Only this recipient domain' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -l html -d 'Write the report as one self-contained HTML page to FILE (- for standard output) instead of printing the table' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -l json -d 'The report as one JSON document'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand report" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand doctor" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand doctor" -l postfix-config -d 'Postfix\'s configuration directory (postconf -c); Postfix\'s default when absent' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand doctor" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand status" -s c -l config -d 'The configuration file, for the [metrics] listener\'s address' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand status" -s a -l address -d 'The metrics listener: inet:127.0.0.1:9466 or unix:/PATH' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand status" -l json -d 'The health report as JSON'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand status" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -s c -l config -d 'The configuration file' -r -F
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -l day -d 'The UTC day, YYYY-MM-DD (yesterday when absent; today gives a partial report, and once sent that day is done for the domain)' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -f -a "list" -d 'The domains with sessions counted that day, their counts and where their report stands'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -f -a "show" -d 'The report of a domain: as sent, or as it would be built now; --json prints its JSON byte for byte'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -f -a "send" -d 'Send that day\'s reports not sent yet, and the retries due'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and not __fish_seen_subcommand_from list show send help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from list" -l day -d 'The UTC day, YYYY-MM-DD (yesterday when absent; today gives a partial report, and once sent that day is done for the domain)' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from list" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from show" -l day -d 'The UTC day, YYYY-MM-DD (yesterday when absent; today gives a partial report, and once sent that day is done for the domain)' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from show" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from send" -l day -d 'The UTC day, YYYY-MM-DD (yesterday when absent; today gives a partial report, and once sent that day is done for the domain)' -r
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from send" -l dry-run -d 'Say what would be sent; change and send nothing'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from send" -l json
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from send" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from help" -f -a "list" -d 'The domains with sessions counted that day, their counts and where their report stands'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from help" -f -a "show" -d 'The report of a domain: as sent, or as it would be built now; --json prints its JSON byte for byte'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from help" -f -a "send" -d 'Send that day\'s reports not sent yet, and the retries due'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand tlsrpt; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand completions" -s h -l help -d 'Print help'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "serve" -d 'Run the daemon (SIGHUP reloads config and policy file and reopens the decision log; SIGTERM/SIGINT stop it)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "explain" -d 'Show the decision for a destination key and every source consulted'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "probe" -d 'Probe a domain\'s mail servers for STARTTLS now and show what the policy decision and the policy server\'s answer would be'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "cache" -d 'The persisted cache (MTA-STS policies and DANE results): list it, show or purge a domain\'s entries'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "check-config" -d 'Load the config and policy file as `serve` would; exit 1 on errors'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "log" -d 'Read decision logs (rotated and gzipped ones too): decisions and delivery outcomes'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "report" -d 'The TLS posture per recipient domain from the delivery outcome records (shares sent encrypted and verified, held recipients, violations), as a table, JSON or an HTML page with charts'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "doctor" -d 'Check Postfix\'s configuration for wiring that bypasses the policy or stops mail (each finding with the command that fixes it), then ask the running daemon through postmap -q. Exit 0 when no problem is found, 1 otherwise'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "status" -d 'Ask a running daemon how it is: listeners, policy, caches, reloads, recent warnings and errors (from the [metrics] listener\'s /health). Exit 0 when it is healthy, 2 when the last reload failed, 1 when it cannot be reached'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "tlsrpt" -d 'TLS reports (RFC 8460): the reporting domains of a UTC day, a domain\'s report byte for byte, or send the day\'s reports now'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve explain probe cache check-config log report doctor status tlsrpt completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "list" -d 'Every cached entry with its state and age'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "show" -d 'A domain\'s entries in full'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "purge" -d 'Remove a domain\'s entries from the cache file (a running daemon forgets them on its next reload)'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and __fish_seen_subcommand_from tlsrpt" -f -a "list" -d 'The domains with sessions counted that day, their counts and where their report stands'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and __fish_seen_subcommand_from tlsrpt" -f -a "show" -d 'The report of a domain: as sent, or as it would be built now; --json prints its JSON byte for byte'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand help; and __fish_seen_subcommand_from tlsrpt" -f -a "send" -d 'Send that day\'s reports not sent yet, and the retries due'
complete -c tls-policyd -n "__fish_tls_policyd_using_subcommand completions" -f -a "bash elvish fish powershell zsh"
