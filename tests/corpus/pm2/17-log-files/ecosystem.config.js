module.exports = {
  apps: [{
    name: 'logger',
    script: 'app.js',
    instances: 2,
    exec_mode: 'fork',
    out_file: './logs/out.log',
    error_file: './logs/error.log',
    log_file: './logs/combined.log',
    merge_logs: true,
    combine_logs: true,
    log_date_format: 'YYYY-MM-DD HH:mm:ss Z',
    time: true,
  }],
};
