# applianced: user, directories, and unit presets (disabled unless the preset enables it).
systemd-sysusers /usr/lib/sysusers.d/applianced.conf >/dev/null 2>&1 || :
systemd-tmpfiles --create /usr/lib/tmpfiles.d/applianced.conf >/dev/null 2>&1 || :
chown root:applianced /etc/applianced/agent.toml /etc/applianced/controller.toml >/dev/null 2>&1 || :
if [ $1 -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl preset applianced-agent.service applianced-controller.service >/dev/null 2>&1 || :
fi
systemctl daemon-reload >/dev/null 2>&1 || :
