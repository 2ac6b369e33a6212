module.exports = {
  apps: [{
    name: 'dev',
    script: 'src/app.js',
    watch: ['src'],
    ignore_watch: ['node_modules', 'logs'],
    watch_delay: 1000,
    watch_options: { followSymlinks: false },
  }],
};
